"""One module per lesson pipeline, named in core.registry."""
