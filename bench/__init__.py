"""
Benchmarks for flannel-tw's data planes and control plane, in the namespace lab.

    python3 -m bench            # as root; see bench/run.py and README.rst "Benchmarks"
"""
