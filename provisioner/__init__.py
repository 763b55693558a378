"""provisioner: onboards AEIMS sites and migrates AEIMS storage, one reversible step at a time."""
