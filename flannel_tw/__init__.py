"""flannel-tw: the flannel overlay network daemon on Twisted."""

__version__ = "0.1.0"
