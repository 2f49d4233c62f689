"""The library of the mixed classifier: mixing (MixedClassifier, mix_logits), transforms of h's logits,
certificates, confidence bounds, smoothing, sequential certification, Lipschitz bounds, model loading
and the embedded architectures. The mixer node runs the certificates, bounds, smoothing, sequential
certification, Lipschitz bounds and model loading (it mixes probabilities itself); MixedClassifier and
the transforms serve library users and the toolkit. torch, numpy and scipy; never ROS, never the
offline toolkit (mix_perception.experiments)."""
