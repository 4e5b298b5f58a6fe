"""Every arq job and cron; `notifier.worker` lists them."""
