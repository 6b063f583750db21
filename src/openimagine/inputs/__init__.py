"""Input images: validating references, fetching them safely, decoding them.

A request may name up to seven images, each an ``http(s)`` URL or a
``data:image/...;base64,`` URI. ``parse_image_refs`` checks their shape when
the request arrives (a bad one is the client's mistake: 400). Everything that
can only go wrong later, while a worker loads them, raises an ``InputError``
whose ``public_message`` is one of the contract's task error messages; the
exception's own text is the internal reason, for logs only.

Fetching a URL given by a client is a server-side request forgery risk, so
``fetch_image_bytes`` refuses loopback, private, link-local and other
non-global addresses (unless ``allow_private_urls``), re-checks every redirect
hop, and connects to exactly the address it checked, so a DNS answer that
changes between check and connect (DNS rebinding) cannot slip through.
"""

from openimagine.inputs.fetch import (
    AddressPolicy,
    fetch_image_bytes,
    is_public_address,
    load_images,
    system_resolver,
)
from openimagine.inputs.images import decode_image, sniff_image_type
from openimagine.inputs.refs import (
    MAX_IMAGES,
    FetchFailed,
    ImageTooLarge,
    InputError,
    InvalidImageReference,
    UnsupportedImage,
    decode_data_uri,
    is_data_uri,
    parse_image_refs,
)

__all__ = [
    "MAX_IMAGES",
    "AddressPolicy",
    "FetchFailed",
    "ImageTooLarge",
    "InputError",
    "InvalidImageReference",
    "UnsupportedImage",
    "decode_data_uri",
    "decode_image",
    "fetch_image_bytes",
    "is_data_uri",
    "is_public_address",
    "load_images",
    "parse_image_refs",
    "sniff_image_type",
    "system_resolver",
]
