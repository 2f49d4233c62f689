"""ROS 2 side of mix_perception: rclpy nodes (mixer, safety monitor, demo camera) and message conversion.

Imports mix_perception.core; core never imports this package.
"""
