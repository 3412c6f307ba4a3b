"""The admin dashboard at /admin: pages for operators (pt-BR and English) and a JSON API for scripts."""
