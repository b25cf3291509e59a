"""The HTTP routes, one `APIRouter` per concern; `server.app` includes them all."""
