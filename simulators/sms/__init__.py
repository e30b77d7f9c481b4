"""An SMS/voice provider speaking Twilio's REST API and signed status callbacks."""
