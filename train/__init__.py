"""ulffn_deploy.train"""
