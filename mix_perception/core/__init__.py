"""What the mixer node runs, and nothing else: mixing, logit transforms, certificates, confidence
bounds, smoothing, model loading and the embedded architectures. torch, numpy and scipy; never ROS,
never the offline toolkit (mix_perception.experiments)."""
