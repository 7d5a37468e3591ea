"""The layer store: pulled and imported images as content-addressed, extracted layers.

Layering: ``imgbuilder`` may import ``registry``; it never imports ``sandkasten``.
"""
