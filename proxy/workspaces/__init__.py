"""Who is calling: API keys, authentication, BYOK key vault and the master-key crypto."""
