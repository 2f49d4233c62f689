"""One module per `mix-perception` subcommand; each defines `configure(parser)` and `main(args) -> int`.

Command modules import heavy dependencies (torch, rclpy) inside `main`, so `--help` is fast and
works without ROS.
"""
