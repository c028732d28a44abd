"""udp backend data path: packets and routes (pure) ."""
