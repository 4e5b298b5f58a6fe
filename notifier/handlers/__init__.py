"""Thin aiohttp handlers, one module per area; each exports a RouteTableDef named `routes`."""
