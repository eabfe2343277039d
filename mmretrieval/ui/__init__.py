"""The Gradio web UI over one open collection.

Modules, in the order a request flows through them:

- :mod:`.server`: options (shared by ``app.py`` and ``mmr serve``), opening the collection, safe ``launch``;
- :mod:`.layout`: the Blocks layout and which handler each event calls (each with a named API endpoint);
- :mod:`.search_handlers` and :mod:`.collection_handlers`: what each action does, errors made readable;
- :mod:`.media`: the only way images reach the browser (by catalog id) and uploads reach the model;
- :mod:`.names`: how file paths are shown (readable UTF-8 even for non-UTF-8 names), apart from how files are opened;
- :mod:`.projection`: the 2-D map of the collection's embeddings.

Importing this package loads no model and opens no collection.
"""
