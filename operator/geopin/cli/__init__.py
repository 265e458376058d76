"""The ``geopin`` command: the top layer; nothing in geopin imports it."""
