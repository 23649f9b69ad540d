"""Development tools that generate files in config/; not shipped with the function."""
