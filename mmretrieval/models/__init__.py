"""Models: specs and identity, offline-safe open_clip loading, the dual encoder, zero-shot scoring."""
