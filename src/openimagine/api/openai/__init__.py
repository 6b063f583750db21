"""The OpenAI Videos face: ``/v1/videos`` in OpenAI's shapes (Video object, list
page, deleted object, error object), on the same tasks, keys, credits, limits
and storage as the Grok face. ``routes.py`` translates HTTP, ``videos.py``
maps requests onto tasks and tasks onto Video objects, ``errors.py`` is the
error shape, ``schemas.py`` what the OpenAPI document says of them."""
