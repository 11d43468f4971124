"""wanmoe.models"""
