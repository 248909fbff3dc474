"""Resources shared by every domain: settings, the database, the IO manager."""
