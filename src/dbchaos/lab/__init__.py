"""The chaos lab: an embedded PostgreSQL, a demo shop, traffic, the chaos server and a dashboard."""
