"""The built book, opened in headless Chromium (a package, so its conftest is not the top-level `conftest`)."""
