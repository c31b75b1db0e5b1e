"""The built-in Vision-Language-Action policy (no rclpy): config, encoders, fusion, heads, model,
and the `VLAPolicy` backend. Importing this package imports torch, nothing heavier."""
