"""The sandbox runtime: the driver interface (``base``) and the Linux driver (``linux``)."""
