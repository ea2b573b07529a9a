"""Robot drivers: each vendor's job-file protocol behind the `appliance.publish.Publisher` interface."""
