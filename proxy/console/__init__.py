"""The workspace console (SPEC §9): server-rendered pages under /console/ for customers."""
