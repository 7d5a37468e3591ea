"""OCI distribution client: references, auth, manifests and verified blob streams.

Speaks HTTP to registries and nothing else; it knows no layer store (that is
``imgbuilder``) and no sandbox (that is ``sandkasten``).
"""
