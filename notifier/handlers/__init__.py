"""The HTTP edge: thin aiohttp handlers, one module per area, and their plumbing (middleware,
body parsing, OpenAPI assembly); `routes.ROUTES` is the whole route table."""
