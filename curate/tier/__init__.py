"""The tier stage: typed rules and recipes, MetaCLIP metadata entries, cluster targets -> uid lists."""
