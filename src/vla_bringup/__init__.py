"""vla_bringup: a ROS 2 Vision-Language-Action robot stack."""
