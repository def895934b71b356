"""Groups and dynamic segments: static groups filled by contact writes, dynamic ones evaluated in SQL."""
