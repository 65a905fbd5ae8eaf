"""The dashboard's routes, one module per page; each page's JSON API sits beside it under /api."""

from dashboards.routes import admin, bulk, charts, grid, media, member, runs, session, tags, users, versions

ROUTERS = [session.router, grid.router, member.router, bulk.router, tags.router, versions.router,
           runs.router, charts.router, admin.router, users.router, media.router]
