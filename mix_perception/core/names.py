"""Names the package spells once, in a module that imports nothing: the parameter tables of the nodes
(and so the safety monitor, the demo camera and the launch arguments) read them without loading torch.

CLASS_NAMES: the embedded models' classes (Fashion-MNIST), index = class id.
ACCEPTANCE_SCORES: the safety monitor's acceptance rule (ros/safety_guarantee.py, experiments/risk_calibration.py).
CERTIFICATION_METHODS: the node parameter `certification`, evaluate's --certify, calibrate's
--certification: none; a Lipschitz h (deterministic); the Gaussian smoothing of h by Theorem 5 or 4.
"""

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SMOOTHING_METHODS = ("smoothing", "smoothing_theorem4")
CERTIFICATION_METHODS = ("none", "lipschitz", *SMOOTHING_METHODS)
# The safety monitor's acceptance scores (parameter acceptance.score; calibrate --goal risk chooses one).
ACCEPTANCE_SCORES = ("radius", "top_probability", "margin", "margin_if_g_agrees", "radius_if_g_agrees")
