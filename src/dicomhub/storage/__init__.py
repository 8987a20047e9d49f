"""Storage seams (protocols.py) and their backends, chosen from URLs in urls.py."""
