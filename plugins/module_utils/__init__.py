"""brokerfleet: sizing arithmetic for a broker and its worker fleet (no Ansible import)."""
