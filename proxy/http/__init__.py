"""The HTTP surface: middleware, admission, limits, body parsing, handlers and the request pipeline."""
