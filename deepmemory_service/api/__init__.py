"""The backend's HTTP face under /v1/api: the route table, thin views, the event stream,
search, request bodies and replies, the OpenAPI document, middlewares and metrics."""
