"""Local stand-ins for the services the app calls: Telegram (telegram) and the PSP (pix)."""
