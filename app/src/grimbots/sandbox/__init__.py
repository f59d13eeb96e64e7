"""Local stand-ins for the services we call (Telegram now, the PSP in issue 4)."""
