"""What mixer.launch.py's arguments override in the params file. Imports only yaml: the launch process
must stay light (no torch, no rclpy), so that it exits at once on Ctrl-C."""


def launch_overrides(device: str, autostart: str, image_topics: str) -> tuple[dict, dict]:
    """(mixer, monitor) parameters that mixer.launch.py puts over the params file, from its arguments as
    strings: only those given ("" = not given) override. image_topics is a YAML list; the monitor watches
    the same topics, fully qualified."""
    import yaml

    mixer, monitor = {}, {}
    if device:
        mixer["device"] = device
    if autostart:
        mixer["autostart"] = autostart.lower() == "true"
    if image_topics:
        mixer["image_topics"] = [str(topic) for topic in yaml.safe_load(image_topics)]
        monitor["sources"] = [topic if topic.startswith("/") else "/" + topic for topic in mixer["image_topics"]]
    return mixer, monitor
