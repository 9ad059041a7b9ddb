"""meshpeer: full-mesh, proxyless VPC peering on Open vSwitch."""

# The one version: setup.cfg reads it (attr:), and every entry point and the OpenAPI document say it.
__version__ = "0.2.0"
