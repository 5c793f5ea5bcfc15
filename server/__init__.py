"""The Ridgeline server: activity store and state machine, REST API, message-system
endpoint for agents, scheduler, queue and job-handler."""
