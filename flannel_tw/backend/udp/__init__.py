"""
The udp backend: flannel0 (TUN) and a UDP socket on 8285, flanneld's wire
format, offload frames between flannel-tw hosts, the route table.
"""
