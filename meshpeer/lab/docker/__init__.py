"""The lab's Docker backend: each lab host is a container (docs/lab.md, "Docker backend").

Only where a host lives changes: ``daemon`` starts (and stops) a Docker engine of the lab's own,
``image`` builds the hosts' image once per content hash, ``containers`` creates a container per
host and names its network namespace as the netns lab would, so links, addresses, VMs, the
fabric, the supervisor and teardown are the netns lab's own code.
"""
