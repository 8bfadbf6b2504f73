"""Hand-written fakes at the byte boundary (an OpenAI-compatible upstream server), used by the integration suites."""
