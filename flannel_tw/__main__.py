"""``python -m flannel_tw``: the same as the ``flannel-tw`` command."""
from flannel_tw.tools.cli import entry

if __name__ == "__main__":
    entry()
