"""``safeclip explore``: a local web page that puts CLIP models side by side on the user's own queries.

    safeclip explore --model base=demo/base --model safe-clip=demo/run --gallery demo/world/test.jsonl

- :mod:`safeclip.explore.gallery`: the gallery (images and captions marked safe/unsafe) and its cached embeddings;
- :mod:`safeclip.explore.search`: the engine (models prepared in the background, top-k per model);
- :mod:`safeclip.explore.thumbnails`: thumbnails, blurred on the server;
- :mod:`safeclip.explore.generation`: one Stable Diffusion image per model's text encoder (``--sd``);
- :mod:`safeclip.explore.server`: the page and its JSON API (standard library HTTP server).
"""
