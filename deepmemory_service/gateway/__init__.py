"""The gateway in front of the backend: user identity, login pages, the web page's files, and
forwarding to the backend with the service token."""
