"""mix_perception: mixed classifiers (Bai, Anderson, Sojoudi, L4DC) with certified radii, for ROS 2."""
