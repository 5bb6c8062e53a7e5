"""Benchmarks: conversion speed, CPU latency, training-loop overhead and the GPU section."""
